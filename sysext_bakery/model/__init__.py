"""Values shared by every stage: arches, images, names and versions."""
