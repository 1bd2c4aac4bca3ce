"""Format versions of the bakery's own image shaping, part of stage's and pack's up-to-date
checks: a changed bakery rebuilds what it would now build differently, and nothing else.

Kept apart from build/stage.py and build/pack.py because the task graph reads them on every
`doit list`, and those modules import archive readers and PySquashfsImage.
"""

# Bump when a staged tree would come out differently from the same downloads and recipe:
# extension-release fields, the [units] drop-in files, install, mode or validation rules,
# static-file handling. Every image is then restaged and, its stage record changing with
# it, repacked.
STAGE_FORMAT = 1

# Bump when the same staged tree would pack into other bytes: mksquashfs or mkfs.erofs
# flags, block size, compression tuning. Every image is then repacked (not restaged).
PACK_FORMAT = 1
