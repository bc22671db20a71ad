"""The error for a tokenizer checkpoint whose keys or shapes are not the layout the loader
expects. Its own module so that the converter (``convert.py``) and the model (``vqmodel.py``)
both raise it without importing each other."""


class CheckpointLayoutError(ValueError):
    """A checkpoint's state dict does not match the expected tokenizer layout."""
