"""Facts and text, before any model: fetching the raw datasets, reading every fact format into one
triplets table, relations and their templates, WordNet hypernyms, target selection and the
TargetKG / ControlKG splits, and encoding facts and WikiText into tensors for a tokenizer."""
