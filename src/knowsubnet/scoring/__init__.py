"""How a model scores facts and text: the one per-fact tail NLL, rank and accuracy (`facts`), ControlLM
perplexity (`text`), and the best template per fact (`templates`). Every stage that reports a
number about a model scores through here, so a number means the same thing everywhere."""
