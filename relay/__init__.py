"""jscc-relay: one stream in, many receivers out, each with only the importance levels it asked for."""
