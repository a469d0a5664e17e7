"""Faces in the wild: MTCNN detection, five-point landmarks and alignment to the ArcFace 112x112 template."""
