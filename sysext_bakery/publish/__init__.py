"""Publishing: sysupdate transfer files, the published directory, signing, GitHub Releases."""
