"""Reports: render what the stages wrote (result.json + figures) into one HTML file."""
