"""Sender reputation (issue 21): the score (`score`), each subject's report (`report`) and
the periodic evaluation that acts on it (`watch`)."""
