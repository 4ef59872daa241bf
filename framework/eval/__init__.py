"""Evaluation of long-context models: passkey retrieval, perplexity by position, efficiency curves.

Reached through the CLI: ``longctx eval passkey``, ``longctx eval perplexity``, ``longctx bench efficiency``;
and after training, from a job's ``eval`` section (``framework.eval.after_training``).
"""
