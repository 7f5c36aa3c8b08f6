"""MongoDB connector: change-stream source, transactional sink (documents as table rows and back)."""
