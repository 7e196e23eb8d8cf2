from .loop import RunResult, build_method, build_view_recipe, pretrain

__all__ = ["RunResult", "build_method", "build_view_recipe", "pretrain"]
