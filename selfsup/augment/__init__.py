from .views import ViewRecipe, ViewSpec, augment, asymmetric, build_recipe, recipe_from_config, symmetric, to_float

__all__ = ["ViewRecipe", "ViewSpec", "augment", "asymmetric", "build_recipe", "recipe_from_config", "symmetric",
           "to_float"]
