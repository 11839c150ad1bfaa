"""A readable report of one shard: settings, counts, shapes, names, clips with notes; a log-mel PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asd.cache.features import FeatureConfig
from asd.cache.shard import Shard

_SETTINGS_FIRST = ("dataset", "machine", "split", "fingerprint", "schema_version", "package_version",
                   "created_utc", "source_root", "source_digest")


def describe_shard(path: str | Path, n_names: int = 5) -> str:
    """Everything a user needs to trust a shard, as text."""
    shard = Shard(path)
    attrs = shard.attrs
    clips, segments = shard.clips, shard.segments
    lines = [f"shard {shard.path}  ({shard.path.stat().st_size / 2**20:.1f} MiB)", "", "settings:"]
    lines += [f"  {key:<16} {attrs[key]}" for key in _SETTINGS_FIRST if key in attrs]
    feature_keys = [k for k in FeatureConfig().to_dict() if k in attrs]
    lines.append("  " + ", ".join(f"{k}={attrs[k]}" for k in feature_keys))
    lines += ["", f"clips: {len(clips)}    segments: {len(segments)}", "",
              "counts by section x domain x label (clips / segments):"]
    table = clips.groupby(["section", "domain", "label"]).agg(clips=("file_name", "size"),
                                                              segments=("n_segments", "sum"))
    lines += ["  " + row for row in table.to_string().splitlines()]
    file = shard.file
    lines += ["", "datasets:"]
    for name in ("waveform", "logmel"):
        ds = file[name]
        lines.append(f"  /{name:<9} {ds.dtype} {list(ds.shape)}  chunks {list(ds.chunks)}")
    lines.append(f"  /clips     {', '.join(file['clips'].keys())}")
    lines.append(f"  /segments  {', '.join(file['segments'].keys())}")
    lines.append(f"  /checksums {', '.join(file['checksums'].keys())}  (one per row, checked on every read)")
    lines += ["", f"first segment names of {len(segments)}:"]
    lines += [f"  {name}" for name in segments["name"].head(n_names)]
    noted = clips[clips["notes"] != ""]
    lines += ["", f"clips with notes: {len(noted)}"]
    lines += [f"  {row.file_name}: {row.notes}" for row in noted.head(20).itertuples()]
    if len(noted) > 20:
        lines.append(f"  ... and {len(noted) - 20} more")
    lengths = clips["n_samples"] / float(attrs["sample_rate"])
    lines += ["", f"clip lengths: min {lengths.min():.2f} s, median {np.median(lengths):.2f} s, "
                  f"max {lengths.max():.2f} s"]
    shard.close()
    return "\n".join(lines)


def plot_segment(path: str | Path, segment: int, png_path: str | Path) -> Path:
    """Write a PNG of one segment's log-mel (and its waveform) to `png_path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shard = Shard(path)
    if not 0 <= segment < shard.n_segments:
        raise IndexError(f"segment {segment} out of range: the shard has {shard.n_segments} segments")
    mel = shard.logmel(slice(segment, segment + 1))[0]
    wave = shard.waveform(slice(segment, segment + 1))[0]
    name = shard.segments.at[segment, "name"]
    clip = shard.clips.iloc[int(shard.segments.at[segment, "clip_index"])]
    rate = float(shard.attrs["sample_rate"])
    fig, (ax_wave, ax_mel) = plt.subplots(2, 1, figsize=(8, 6), height_ratios=[1, 3])
    ax_wave.plot(np.arange(len(wave)) / rate, wave / 32768.0, linewidth=0.4)
    ax_wave.set(xlim=(0, len(wave) / rate), ylabel="amplitude", title=f"{clip.file_name}\n{name}")
    image = ax_mel.imshow(mel, origin="lower", aspect="auto", cmap="magma",
                          extent=(0, len(wave) / rate, 0, mel.shape[0]))
    ax_mel.set(xlabel="time in segment (s)", ylabel="mel bin")
    fig.colorbar(image, ax=ax_mel, label="dB", orientation="horizontal", pad=0.15, fraction=0.05)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    shard.close()
    return png_path
