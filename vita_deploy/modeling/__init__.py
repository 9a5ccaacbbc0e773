"""The VITA reference model, one file per stage: backbone -> pixel_decoder -> frame_decoder -> vita_head."""
