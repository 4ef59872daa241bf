"""Metrics: pure functions of predictions and references (torch and the standard library only).

    framework.metrics.qa_scoring     exact match and token F1 of answers, the SQuAD way
    framework.metrics.text_metrics   reconstruction token F1, BLEU and ROUGE-L
    framework.metrics.correlation    Pearson and Spearman with two-sided p-values
    framework.metrics.poc_metrics    PoC's PPE, mean retention curve, ratio search and P@R

Models, evaluations, studies and benchmarks import them from here; nothing here imports from
framework.eval, framework.studies, framework.methods, framework.launch or framework.tracking.
"""
