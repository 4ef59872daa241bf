"""Recipes of several jobs that make one study (framework.launch.stages runs them), and the stages and
reports only studies use: PoC's labelling stage (poc_labelling) and comparison (poc_compare), the autoencoder
study's report (ae_study_report); and compression_qa, the small-scale compression study that runs its stages
in one process (benchmarks/compression_qa.py drives it)."""
