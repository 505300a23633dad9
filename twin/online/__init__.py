"""Online identification: the re-fit worker that reads the historian and registers challengers."""
