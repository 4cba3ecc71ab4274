"""Data: the dataset format (Parquet shards, metadata, RF table), receptive fields and the RF projection, the
simulated recording, ingesting a lab's arrays, and `rfgan check`. Reading with Ray Data is the only Ray here."""
