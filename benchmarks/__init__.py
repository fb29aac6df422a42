"""Speed measurements that print ratios measured side by side in one run (`make bench`)."""
