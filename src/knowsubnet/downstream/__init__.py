"""Downstream tasks after removal: CommonsenseQA finetuning of the original, remaining and
random-removed models."""
