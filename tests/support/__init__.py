"""Test-only helpers: synthetic datasets in the official file formats, synthetic CRM features, the CRM benchmark."""
