"""jscc_stream.sender"""
