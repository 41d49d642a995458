"""jscc_stream.netem"""
