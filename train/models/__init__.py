"""Model loading: the embedded digit teacher, SD1.5/SDXL from folders or single files, the digit classifier."""
