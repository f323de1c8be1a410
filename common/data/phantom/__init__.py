"""Phantom sites: procedural full-field mammograms written as TCIA CBIS-DDSM downloads."""
