"""The only subpackage that knows file formats and folder naming."""
