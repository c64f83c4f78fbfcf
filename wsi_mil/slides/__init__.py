"""Reading whole-slide images: reader interface, OpenSlide backend, mpp rules."""
from wsi_mil.slides.base import READERS, SlideReader
from wsi_mil.slides.factory import list_readers, open_slide
from wsi_mil.slides.openslide_backend import OpenSlideReader
from wsi_mil.slides.pil_backend import PilImageReader

__all__ = ["READERS", "OpenSlideReader", "PilImageReader", "SlideReader", "list_readers", "open_slide"]
