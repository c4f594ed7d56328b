"""The ignore label shared by every data set in segtut.datasets (CamVid keeps SegNet's 11)."""
IGNORE_INDEX = 255
