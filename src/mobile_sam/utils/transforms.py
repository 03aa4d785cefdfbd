"""`ResizeLongestSide`, at the original module path (`mobile_sam.transforms` holds it)."""
from ..transforms import ResizeLongestSide

__all__ = ["ResizeLongestSide"]
