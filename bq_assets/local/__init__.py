"""The local cloud stack (fake-gcs-server + bqemulator) and the sample source data."""
