"""Metrics of BiaScope (SPEC §3): bias (SS, PS, LMS, ICAT, CrowS), knowledge (DS, RS) and general
ability (perplexity, known_1000, downstream accuracy), each with a bootstrap 95% CI."""
