"""Raw DCASE data: file names and folders, the official archives, and a synthetic generator."""
