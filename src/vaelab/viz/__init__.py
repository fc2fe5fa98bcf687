"""Pictures: plots (the only matplotlib user) and report.html."""
