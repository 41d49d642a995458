"""jscc_stream.proto"""
