"""Audio features: decoding and the log-mel front end (``audio``), chroma for the harmony check
(``chroma``), and the spectrograms dedup compares files by (``spectra``)."""
