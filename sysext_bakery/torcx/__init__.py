"""Converting torcx images and profiles into sysexts."""
