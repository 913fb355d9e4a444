"""How a model scores facts and text: the one per-fact tail NLL, rank and accuracy (`facts`), ControlLM
perplexity (`text`), the best template per fact (`templates`), facts through the top blocks only
(`cached`) and sentences under several versions of a model (`sentences`). Every stage that reports a
number about a model scores through here, so a number means the same thing everywhere."""
