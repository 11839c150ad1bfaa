"""Neural networks and scoring building blocks for anomalous sound detection."""
