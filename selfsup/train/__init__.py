from .loop import Callback, FitPlan, RunResult, StepEvent, fit

__all__ = ["Callback", "FitPlan", "RunResult", "StepEvent", "fit"]
