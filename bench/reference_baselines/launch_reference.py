"""Run the reference's ``main.py`` with its MNIST images served from memory.

``python launch_reference.py REPO [main.py flags...]`` runs ``REPO/main.py`` unmodified (as
``__main__``, from ``REPO``), after one substitution in the reference's table of datasets
(``data.available.AVAILABLE_DATASETS["MNIST"]``): a subclass of torchvision's ``MNIST``
that returns, for every index, the tensor the reference's own transform
(``transforms.ToTensor()``) makes of that image, computed once for the whole set rather
than through PIL for every sample. Same images, same values (``run_reference.py`` checks
that they are equal element for element), same labels and label transform; only the
per-sample PIL decoding is gone, which took most of each training step on a shared CPU.
Any other transform (the reference uses none for Split-MNIST) falls back to torchvision's
own path.
"""

from __future__ import annotations

import os
import runpy
import sys


def install(repo: str) -> None:
    sys.path.insert(0, repo)
    import data.available as available  # the reference's module
    from torchvision import datasets, transforms

    class MNIST(datasets.MNIST):  # torchvision finds the files under root/<class name>/raw
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            tf = self.transform
            plain = isinstance(tf, transforms.Compose) and len(tf.transforms) == 1 and isinstance(
                tf.transforms[0], transforms.ToTensor
            )
            # what ToTensor makes of a uint8 'L' image: float, divided by 255, channel axis first
            self._tensors = self.data.unsqueeze(1).float().div(255) if plain else None

        def __getitem__(self, index):
            if self._tensors is None:
                return super().__getitem__(index)
            target = int(self.targets[index])
            if self.target_transform is not None:
                target = self.target_transform(target)
            return self._tensors[index], target

    available.AVAILABLE_DATASETS["MNIST"] = MNIST


def main() -> None:
    repo = os.path.abspath(sys.argv[1])
    install(repo)
    os.chdir(repo)
    sys.argv = [os.path.join(repo, "main.py"), *sys.argv[2:]]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
