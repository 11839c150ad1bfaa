"""The one check that matplotlib can draw here, made before any work: the plots are written at the end of
a stage, so a plotting problem found there would cost the whole training.

The project draws on the Agg canvas without pyplot, but `import matplotlib` itself validates the
`MPLBACKEND` environment variable, so a wrong value (a typo, a backend of another machine) fails every
plot. That, or a matplotlib that cannot draw at all, becomes one line naming the cause.
"""

from __future__ import annotations

import io
import os

from asd.errors import BadInput


def check_plotting() -> None:
    """Draw a tiny figure to PNG bytes; BadInput naming MPLBACKEND (or the error) when that fails."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(1, 1))
        FigureCanvasAgg(figure)
        figure.add_subplot().plot([0, 1], [0, 1])
        figure.savefig(io.BytesIO(), format="png")
    except Exception as err:  # anything: this is a probe of the environment, and the message names it
        reason = str(err).split(";")[0].strip() or type(err).__name__
        backend = os.environ.get("MPLBACKEND")
        if backend is not None:
            raise BadInput(f"MPLBACKEND={backend!r}: matplotlib cannot draw with it ({reason}); unset MPLBACKEND "
                           "or set MPLBACKEND=Agg (the plots need no display)") from None
        raise BadInput(f"matplotlib cannot draw a figure here ({type(err).__name__}: {reason}); the plots "
                       "need a working matplotlib") from None
