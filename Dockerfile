# The Astro project's image (`astro dev start`, `astro deploy`): Astro Runtime 3.3 (Apache Airflow 3.3) on Python
# 3.11, the versions setup.cfg asks for. The runtime's build triggers install packages.txt (apt: what mysqlclient
# needs to build) and requirements.txt (pip), then copy this project into /usr/local/airflow (.dockerignore says
# what stays out). The provider itself is installed from that copy, its dependencies being requirements.txt.
FROM astrocrpublic.azurecr.io/runtime:3.3-8-python-3.11

# In-tree build into the runtime's environment; --no-deps: requirements.txt already installed them, pinned the
# same way as setup.cfg (tests/deploy/test_images.py).
RUN pip install --no-cache-dir --no-deps /usr/local/airflow

# include/config is copied with the project; the DAG bundle (dags/cdc_pipelines.py) reads it from here.
ENV CDC_CONFIG_DIR=/usr/local/airflow/include/config
