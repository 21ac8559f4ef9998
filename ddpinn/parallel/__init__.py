"""Distribution: launch detection, communicators, the partition (layout), halo exchange and
gradient synchronisation. One process is simply world size 1."""
