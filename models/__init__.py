"""jscc_stream.models"""
