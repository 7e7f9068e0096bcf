"""``burst.py TAG N``: N numbered lines as fast as they can be written, then exit."""

import sys

tag, count = sys.argv[1], int(sys.argv[2])
out = sys.stdout
for i in range(count):
    out.write(f"{tag} {i}\n")
    out.flush()
