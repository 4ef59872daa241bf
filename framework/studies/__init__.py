"""Recipes of several jobs that make one study (framework.launch.stages runs them)."""
