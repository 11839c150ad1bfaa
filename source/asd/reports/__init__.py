"""Pages, plots and printed summaries, read from the files the stages wrote."""
