"""Convert scikit-learn's copy of the UCI digits (digits.csv.gz) into mpinn/data/digits.npz.

Run once, by hand: python tools/convert_digits.py path/to/sklearn/datasets/data/digits.csv.gz
The CSV has 1,797 rows of 64 pixel values (0..16) followed by the label.
"""

import sys
from pathlib import Path

import numpy as np

source = Path(sys.argv[1])
table = np.loadtxt(source, delimiter=",", dtype=np.uint8)
images, labels = table[:, :64], table[:, 64]
assert images.shape == (1797, 64) and images.max() == 16 and set(labels) == set(range(10))
target = Path(__file__).resolve().parent.parent / "mpinn" / "data" / "digits.npz"
np.savez_compressed(target, images=images, labels=labels)
print(f"wrote {target} ({target.stat().st_size} bytes)")
