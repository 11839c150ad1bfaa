"""Labels and augmentation for the embedding detector: the auxiliary class table, class-balancing weights
and the self-supervised spectral-shift task.

Classes are section x attribute string x domain, read from a shard's clip table (the detector prefixes the
machine type when one network learns several). Where attributes are
hidden (``noAttribute``) or absent (``""``) they fall back to section x domain. On top of that every
training segment is shifted along the mel axis by one of K fixed amounts and the network must also tell
*which* shift was applied (labels are ``class * K + shift``). Why this task: it costs one ``torch.roll``
per batch, it is always learnable (even with a single class), and solving it forces the embedding to
encode *where* in the spectrum a machine's energy lies, which is what most machine-sound anomalies
disturb (a bearing whine, a shifted resonance). Time reversal was rejected: stationary machine sounds
sound the same backwards, so that task has no answer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

HIDDEN_ATTRIBUTES = ("", "noAttribute")


def class_name(section: str, attributes: str, domain: str) -> str:
    """Readable name of one auxiliary class; hidden attributes are left out."""
    attributes = "" if attributes in HIDDEN_ATTRIBUTES else attributes
    domain = "target" if domain == "target" else "source"
    return "/".join(part for part in (f"section_{section}", attributes, domain) if part)


def clip_class_names(clips: pd.DataFrame) -> np.ndarray:
    """The class name of every clip of a clip table (same order)."""
    return np.asarray([class_name(str(s), str(a), str(d)) for s, a, d in
                       zip(clips["section"], clips["attributes"], clips["domain"], strict=True)])


def class_weights(counts: np.ndarray, power: float) -> np.ndarray:
    """Loss weight per class, ``(mean count / count) ** power``: 0 = unweighted, 1 = fully balanced.

    A power below 1 is a compromise: 100 target segments against 9,900 source segments would otherwise
    be weighted ~100x and make the loss as noisy as ten clips are.
    """
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    return (counts.mean() / counts) ** power


def mel_shift(x: Tensor, shift: Tensor) -> Tensor:
    """Shift each log-mel ``[B, n_mels, T]`` along the mel axis by ``shift[b]`` bins (edge bins repeat).

    Positive shifts move energy to higher bins. Implemented as one gather with clamped indices.
    """
    n_mels = x.shape[1]
    source_bin = torch.arange(n_mels, device=x.device)[None, :] - shift.to(x.device)[:, None]
    index = source_bin.clamp(0, n_mels - 1)[:, :, None].expand(-1, -1, x.shape[2])
    return torch.gather(x, 1, index)


def augmented_labels(x: Tensor, classes: Tensor, shifts: tuple[int, ...],
                     generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Apply a random shift from `shifts` to every sample; label = ``class * K + shift index``."""
    k = len(shifts)
    if k == 1:
        return mel_shift(x, torch.full((len(x),), shifts[0])) if shifts[0] else x, classes
    choice = torch.randint(k, (len(x),), generator=generator)
    amounts = torch.as_tensor(shifts)[choice]
    return mel_shift(x, amounts), classes * k + choice.to(classes.device)
