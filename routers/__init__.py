"""Route rules: schema, matching, body-part normalisation, series selection, explain."""
