"""jscc_stream.receiver"""
