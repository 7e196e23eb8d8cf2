from .views import ViewRecipe, ViewSpec, augment, asymmetric, build_recipe, symmetric, to_float

__all__ = ["ViewRecipe", "ViewSpec", "augment", "asymmetric", "build_recipe", "symmetric", "to_float"]
