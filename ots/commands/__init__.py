"""The `ots` CLI verbs that drive library engines (one module per verb; :mod:`ots.cli` dispatches to them)."""
